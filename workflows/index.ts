export { TrainingJob } from './trainingJob';
export { RetrainModel } from './retrainModel';
