export { TrainingJob } from './trainingJob';
